"""Item 1: a run keeps its LLM for life; a plain --resume goes on with it, another is refused unless
--switch-llm, and then the report lists both."""

from __future__ import annotations

import json

from fake_endpoint import FakeEndpoint
from harness import assert_each_row_once, cli_inprocess, label_args, one_line_error, write_data


def _stop_after(endpoint, n: int) -> None:
    """The endpoint answers n prompts, then is down (503): the run stops resumably part-way."""
    endpoint.fail_when(lambda text: "503" if sum(1 for r in endpoint.log if r.valid) >= n else None)


def test_plain_resume_keeps_the_runs_llm_and_another_is_refused(tmp_path, endpoint, monkeypatch):
    data = write_data(tmp_path / "data.csv", 40)
    run_dir = tmp_path / "run"
    _stop_after(endpoint, 4)
    code, err = cli_inprocess(label_args(data, run_dir, endpoint), monkeypatch)
    assert code == 2 and "resume" in one_line_error(err)
    plan = json.loads((run_dir / "run.json").read_text())
    assert plan["llm"]["identity"] == {"base_url": endpoint.base_url, "model": endpoint.model, "embedded": False}

    with FakeEndpoint("negative", model="other-llm") as other:
        # Another LLM, said explicitly, without --switch-llm: refused before anything is asked.
        code, err = cli_inprocess(["label", "--resume", str(run_dir), "-q", "--llm-base-url", other.base_url,
                                   "--llm-model", other.model], monkeypatch)
        assert code == 2
        line = one_line_error(err)
        assert f"fake-llm@{endpoint.base_url}" in line and f"other-llm@{other.base_url}" in line
        assert "--switch-llm" in line and other.log == []

        # A plain resume (no LLM flags) talks to the run's own endpoint again, not the embedded model.
        endpoint.clear()
        asked_before = len(endpoint.log)
        _stop_after(endpoint, 3)
        code, err = cli_inprocess(["label", "--resume", str(run_dir), "-q"], monkeypatch)
        assert code == 2, err  # stopped again by the endpoint, after answering 3 more
        assert sum(1 for r in endpoint.log if r.valid) == 3 > asked_before

        # --switch-llm: the rest goes to the other LLM and the report shows both.
        code, err = cli_inprocess(["label", "--resume", str(run_dir), "-q", "--llm-base-url", other.base_url,
                                   "--llm-model", other.model, "--switch-llm"], monkeypatch)
        assert code == 0, err
        assert any(r.valid for r in other.log)
    assert_each_row_once(run_dir, data)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["llm"]["all"] == [f"fake-llm@{endpoint.base_url}", f"other-llm@{other.base_url}"]
    assert "switched LLMs" in (run_dir / "report.md").read_text()
    assert any("switched the LLM" in w for w in report["warnings"])
