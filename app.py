"""The WSGI entry point gunicorn serves: ``gunicorn app:app -c python:sidecar.gunicorn_conf``."""

from sidecar import create_app

app = create_app()
