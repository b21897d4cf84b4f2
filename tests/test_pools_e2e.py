"""Pools: an application channel served by its own pool, used as a task queue."""
import pytest

from harness import checked_system, read, run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_pools():
    with checked_system(pools={"tasks": (["tasks.*"], 1), "default": (["*"], 2)}) as running:
        yield running


def test_task_sent_to_another_pool_answers_the_socket(two_pools):
    system = two_pools
    task_worker = system.processes["worker-tasks-0"].pid
    web_workers = {system.processes[f"worker-default-{i}"].pid for i in range(2)}

    async def scenario():
        ws = await system.connect("/test/task")
        answers = []
        for word in ("alpha", "beta", "gamma"):
            ws.write_message(word)
            answers.append((await read(ws)).split())
        ws.close()
        return answers

    for (text, submitter, runner), word in zip(run(scenario()), ("alpha", "beta", "gamma")):
        assert text == word.upper()
        assert int(submitter) in web_workers
        assert int(runner) == task_worker


def test_reply_channel_by_name_from_a_task(two_pools):
    async def scenario():
        ws = await two_pools.connect("/test/task-by-name")
        ws.write_message("payload ✓")
        answer = await read(ws)
        ws.close()
        return answer

    assert run(scenario()) == "payload ✓".encode()


def test_a_channel_nobody_consumes_is_counted_and_warned_once(two_pools):
    async def scenario():
        ws = await two_pools.connect("/test/task-to-nobody")
        for _ in range(3):
            ws.write_message("x")
            assert await read(ws) == "queued"
        ws.close()

    run(scenario())
    counts = two_pools.settled_counters("worker-tasks")
    assert counts["unhandled"] == 3
    assert two_pools.all_logs().count(
        "no consumer for channel tasks.nobody; dropped, and counted as 'unhandled'") == 1
