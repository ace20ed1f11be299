"""Shared test settings live in tests/course_env.py (loaded for the whole run by pytest.ini)."""
from tests.course_env import *  # noqa: F401,F403  (also when a test file is run without pytest.ini)
