"""scripts/autobahn_summary.py: the spec it writes and the summary it prints (pure logic)."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import autobahn_summary as ab  # noqa: E402

# A small index.json as wstest 0.8.2 writes it (agent -> case id -> entry).
INDEX = {
    "zchannels": {
        "1.1.1": {"behavior": "OK", "behaviorClose": "OK", "duration": 3,
                  "remoteCloseCode": 1000, "reportfile": "zchannels_case_1_1_1.json"},
        "3.2": {"behavior": "NON-STRICT", "behaviorClose": "OK", "duration": 2,
                "remoteCloseCode": None, "reportfile": "zchannels_case_3_2.json"},
        "7.1.6": {"behavior": "INFORMATIONAL", "behaviorClose": "INFORMATIONAL",
                  "duration": 5, "remoteCloseCode": 1000,
                  "reportfile": "zchannels_case_7_1_6.json"},
        "9.10.1": {"behavior": "OK", "behaviorClose": "OK", "duration": 1000,
                   "remoteCloseCode": 1000, "reportfile": "zchannels_case_9_10_1.json"},
        "9.2.1": {"behavior": "FAILED", "behaviorClose": "OK", "duration": 10000,
                  "remoteCloseCode": 1009, "reportfile": "zchannels_case_9_2_1.json"},
        "12.1.1": {"behavior": "UNIMPLEMENTED", "behaviorClose": "OK", "duration": 4,
                   "remoteCloseCode": None, "reportfile": "zchannels_case_12_1_1.json"},
        "7.3.1": {"behavior": "OK", "behaviorClose": "UNCLEAN", "duration": 7,
                  "remoteCloseCode": None, "reportfile": "zchannels_case_7_3_1.json"},
    }
}
CASE_9_2_1 = {
    "description": "Send text message message with payload of length 64 * 2**10 (64k).",
    "expectation": "Receive echo'ed text message (with payload as sent).",
    "result": "Did not receive expected\n  events.",
    "resultClose": "Connection was properly closed",
}
CASE_12_1_1 = {
    "description": "Echo 1000 messages with permessage-deflate.",
    "expectation": "Receive echo'ed messages.",
    "result": "The server does not support permessage-deflate.",
    "resultClose": "Connection was properly closed",
}


def test_counts_and_failing_cases_in_case_order():
    details = {"9.2.1": CASE_9_2_1, "12.1.1": CASE_12_1_1}
    text, passed = ab.summarize(INDEX["zchannels"], details, elapsed=42.0)
    assert not passed
    lines = text.splitlines()
    assert lines[0] == ("Autobahn|Testsuite results for zchannels: 7 cases, 42.0 s in all "
                        "(cases themselves: 11.0 s)")
    assert lines[1] == ("  behavior:      OK 3, NON-STRICT 1, INFORMATIONAL 1, FAILED 1, "
                        "UNIMPLEMENTED 1")
    assert lines[2] == ("  behaviorClose: OK 5, WRONG CODE 0, FAILED BY CLIENT 0, "
                        "INFORMATIONAL 1, UNCLEAN 1, FAILED 0")
    assert lines[3] == "3 failing case(s):"
    # 7.3.1 < 9.2.1 < 12.1.1: numeric order, not string order
    headers = [line for line in lines if line.startswith("  ") and not line.startswith("      ")]
    assert [h.split(":")[0].strip() for h in headers[2:]] == ["7.3.1", "9.2.1", "12.1.1"]
    assert "  9.2.1: behavior FAILED, close OK (remote close code 1009, 10000 ms)" in lines
    assert "      result:      Did not receive expected events." in lines  # one line
    assert "      result:      The server does not support permessage-deflate." in lines
    assert "      (no case file zchannels_case_7_3_1.json)" in lines


def test_all_passing():
    entries = {k: v for k, v in INDEX["zchannels"].items()
               if v["behavior"] not in ("FAILED", "UNIMPLEMENTED")
               and v["behaviorClose"] != "UNCLEAN"}
    text, passed = ab.summarize(entries, {})
    assert passed
    assert "4 cases (cases themselves: 1.0 s)" in text.splitlines()[0]
    assert text.splitlines()[-1].startswith("every case passed")


def test_no_cases_is_not_a_pass():
    text, passed = ab.summarize({}, {})
    assert not passed
    assert "NO CASES RAN" in text


def test_unknown_behaviors_are_counted_too():
    entries = {"1.1.1": {"behavior": "NO_CLOSE", "behaviorClose": "OK", "duration": 1}}
    text, passed = ab.summarize(entries, {})
    assert passed
    assert text.splitlines()[1].endswith("UNIMPLEMENTED 0, NO_CLOSE 1")


def test_long_descriptions_are_cut():
    assert ab._one_line("a  b\n c") == "a b c"
    cut = ab._one_line("x" * 1000)
    assert len(cut) == ab.DESCRIPTION_CHARS and cut.endswith("...")


def test_spec_and_cases():
    assert ab.parse_cases(" 1.*, 7.* ,") == ["1.*", "7.*"]
    with pytest.raises(ValueError):
        ab.parse_cases(" , ")
    spec = ab.make_spec("ws://127.0.0.1:1234/ws/echo", ["1.*"], "/tmp/r")
    assert spec == {"outdir": "/tmp/r",
                    "servers": [{"agent": "zchannels", "url": "ws://127.0.0.1:1234/ws/echo"}],
                    "cases": ["1.*"], "exclude-cases": [], "exclude-agent-cases": {}}


def test_main_reads_a_report_directory(tmp_path, capsys):
    (tmp_path / "index.json").write_text(json.dumps(INDEX))
    (tmp_path / "zchannels_case_9_2_1.json").write_text(json.dumps(CASE_9_2_1))
    (tmp_path / "zchannels_case_12_1_1.json").write_text(json.dumps(CASE_12_1_1))
    assert ab.main(["summary", "--report", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "description: Send text message message with payload" in out
    assert "(no case file zchannels_case_7_3_1.json)" in out
    assert ab.main(["summary", "--report", str(tmp_path / "missing")]) == 2


def test_main_writes_the_spec(tmp_path):
    out = tmp_path / "spec.json"
    assert ab.main(["spec", "--url", "ws://h:1/ws/echo", "--outdir", "/r", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["cases"] == list(ab.DEFAULT_CASES)


def test_process_running():
    assert ab.process_running(os.getpid())
    assert not ab.process_running(2 ** 22 + 1)  # above Linux's pid_max
