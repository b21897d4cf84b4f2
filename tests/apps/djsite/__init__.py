"""A small but real Django project, served through zchannels by tests/test_django_e2e.py."""
