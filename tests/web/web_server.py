"""The Streamlit web app as a real subprocess, for tests: see digit_predictor.testing.web_server."""

from digit_predictor.testing.web_server import WebServer, start_web, web_server

__all__ = ["WebServer", "start_web", "web_server"]
