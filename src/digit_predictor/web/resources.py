"""Objects that live as long as the Streamlit process: settings, the api session, the DB pool.

`st.cache_resource` keeps one of each across reruns and sessions; the api client's connection
pool and the database pool are both thread-safe.
"""

from __future__ import annotations

import streamlit as st

from digit_predictor.config import Settings, get_settings
from digit_predictor.db import Database
from digit_predictor.web.api_client import ApiClient


def settings() -> Settings:
    return get_settings()


@st.cache_resource(show_spinner=False)
def api_client() -> ApiClient:
    s = settings()
    return ApiClient(s.api_url, api_key=s.api_key, timeout_s=s.request_timeout_s)


@st.cache_resource(show_spinner=False)
def database() -> Database:
    # Construction never connects: the app starts (and draws, and predicts) with the database down.
    return Database.from_settings(settings())
