"""End to end: Django's path converters and nested route tables in a real system (the
consumers are tests/consumers/routes.py, under /test/routes/...)."""
import uuid

import pytest

from harness import read, read_until_closed, run

pytestmark = pytest.mark.e2e


async def first_answer(system, path):
    ws = await system.connect(path)
    answer = await read(ws)
    ws.close()
    return answer


async def close_code(system, path):
    ws = await system.connect(path)
    assert await read_until_closed(ws) == []
    return ws.close_code


def test_an_int_parameter_arrives_as_an_int(system):
    assert run(first_answer(system, "/test/routes/int/42")) == "n=int:42"
    assert run(first_answer(system, "/test/routes/int/007")) == "n=int:7"
    # Not digits: no route, as with any unknown path.
    assert run(close_code(system, "/test/routes/int/4x2")) == 4404


def test_a_uuid_parameter_arrives_as_a_uuid(system):
    value = uuid.uuid4()
    assert run(first_answer(system, f"/test/routes/uuid/{value}")) == f"u=UUID:{value}"
    assert run(close_code(system, f"/test/routes/uuid/{str(value).upper()}")) == 4404


def test_a_nested_table_routes_with_the_prefix_parameters(system):
    async def scenario():
        ws = await system.connect("/test/routes/v2/rooms/12/")
        assert await read(ws) == "room=int:12 version=int:2 groups=test.routes.2.12"
        ws.write_message("hi")
        assert await read(ws) == "room 13"  # the class-based consumer's kwargs are ints
        ws.close()
        assert await first_answer(system, "/test/routes/v2/rooms/archive/2024") == \
            "archive version=int:2 year=int:2024"
        assert await first_answer(system, "/test/routes/v3/rooms/a-slug") == \
            "slug name=str:a-slug version=int:3"
        # The route declared before the include wins over the table's class.
        assert await first_answer(system, "/test/routes/v1/rooms/0/") == "declared first"
        # The custom converter's to_python raises ValueError for 1850: no match, and
        # no later route matches either.
        assert await close_code(system, "/test/routes/v2/rooms/archive/1850") == 4404

    run(scenario())
