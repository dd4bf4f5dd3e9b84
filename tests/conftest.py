"""Fixtures shared by the test modules."""
import pytest

from hub_server import HubServer


@pytest.fixture
def hub_server(tmp_path):
    """A Hub-compatible HTTP server on 127.0.0.1 (tests/hub_server.py), storing under tmp_path/hub."""
    with HubServer(tmp_path / 'hub') as server:
        yield server
