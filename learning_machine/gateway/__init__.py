"""The gateway: the public REST API (FastAPI) in front of the model server and the database."""

from learning_machine.gateway.app import create_app

__all__ = ["create_app"]
