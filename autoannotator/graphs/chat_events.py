"""The chat as trace events: what the graph did, as plain JSON objects (no rendering here).

Events (each with ``type``): ``user``, ``assistant`` (text), ``tool_call`` (id, name, args),
``tool_result`` (id, name, ok, result), ``confirm`` (plans with their estimates), ``confirm_answer``,
``run_event`` (the runner's progress events) and ``counters`` (a snapshot per batch). The CLI's
``cli/trace.py`` draws them; the chat graph's weak-model path speaks ``summarize``'s lines.
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

PAID = ("start_labelling", "resume_run")  # tools that label a file: their summary is a run's
CONFIRM = PAID + ("verify_samples", "launch_finetune")  # paid or long: the chat asks before each


# -- events from the graph -----------------------------------------------------------------------
def result_payload(content: Any) -> Any:
    """A ToolMessage's content as the tool's result dict (tools return JSON), else the text itself."""
    if isinstance(content, str):
        try:
            return json.loads(content)
        except ValueError:
            return content
    return content


def events_from_message(m: BaseMessage) -> list[dict[str, Any]]:
    if isinstance(m, HumanMessage):
        return [{"type": "user", "text": str(m.content)}]
    if isinstance(m, ToolMessage):
        return [{"type": "tool_result", "id": m.tool_call_id, "name": m.name or "", "ok": m.status != "error",
                 "result": result_payload(m.content)}]
    out: list[dict[str, Any]] = []
    if isinstance(m, AIMessage):
        if str(m.content).strip():
            out.append({"type": "assistant", "text": str(m.content).strip()})
        out += [{"type": "tool_call", "id": c["id"], "name": c["name"], "args": c["args"]} for c in m.tool_calls]
    return out


def events_from_update(update: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``stream_mode="updates"`` chunk as trace events (an interrupt becomes a ``confirm``)."""
    out: list[dict[str, Any]] = []
    for node, value in update.items():
        if node == "__interrupt__":
            out += [{"type": "confirm", **(i.value if isinstance(i.value, dict) else {"question": i.value})}
                    for i in value]
        elif isinstance(value, dict):
            for m in value.get("messages", []):
                out += events_from_message(m)
    return out


def summarize(name: str, result: Any) -> str:
    """One line saying what a tool's result means (the panel's summary, a weak LLM's reply)."""
    if not isinstance(result, dict):
        return str(result).splitlines()[0][:300] if result else "(no result)"
    if name in PAID:
        acc = f", accuracy {result['accuracy']:.4f}" if result.get("accuracy") is not None else ""
        written = f"; labels in {result['out_path']}" if result.get("out_path") else ""
        return (f"run {result['run_id']}: {result['rows']} rows labelled, {result['llm_calls']} LLM calls "
                f"({result['llm_call_rate']:.1%}), est. ${result['est_cost_usd']:.6f}{acc}{written}")
    if name == "run_status":
        agr = "-" if result.get("agreement") is None else f"{result['agreement']:.1%}"
        return (f"run {result['run_id']}: {result['rows_done']}/{result['rows_total'] or '?'} rows"
                f"{' (finished)' if result['finished'] else ''}, {result['llm_calls']} LLM calls, tokens "
                f"{result['tokens_in']}/{result['tokens_out']}, est. ${result['est_cost_usd']:.6f} at "
                f"{result['price_model']} prices, agreement {agr}, pool {result['pool_size']}/{result['beta']}")
    if name == "explain_row":
        return f"row {result['row']}: {result['reason']}; LLM: {result['llm_answer']}; final: {result['final_label']}"
    if name == "show_code":
        return result.get("note") or "deployment code: " + ", ".join(
            f"{f['model']} v{f['version']}" for f in result["files"])
    if name == "run_ensemble":
        return (f"run {result['run_id']}: {len(result['rows'])} rows scored, {result['n_to_llm']} would go to the "
                f"LLM (epsilon {result['epsilon']:g})")
    if name == "verify_samples":
        return (f"run {result['run_id']}: {len(result['answers'])} rows verified by {result['verifier']}, "
                f"{result['new_calls']} new LLM calls, pool {result['pool_size']}")
    if name == "launch_finetune":
        kept = ", ".join(f"{r['model']} {r['acc_before']}→{r['acc_after']} ({'kept' if r['accepted'] else 'refused'})"
                         for r in result["records"])
        return f"run {result['run_id']}: fine-tuning round {result['round']} on {result['pool_size']} rows: {kept}"
    if name == "set_parameter":
        return "next run: " + ", ".join(f"{k}={v}" for k, v in result["params"].items())
    return json.dumps(result, default=str)[:300]
