"""Entry point: `streamlit run src/digit_predictor/web/app.py`. Sets the page up and navigates."""

from __future__ import annotations

import streamlit as st
from pydantic import ValidationError

from digit_predictor.web import resources

st.set_page_config(page_title="Digit Predictor", page_icon="✍️", layout="wide")
# A traceback never reaches the browser, even from an error nobody foresaw.
st.set_option("client.showErrorDetails", "none")
st.set_option("client.toolbarMode", "minimal")

try:
    resources.settings()
except ValidationError as exc:
    problems = "; ".join(str(e.get("msg", e)) for e in exc.errors())
    st.error(f"The web app is misconfigured: {problems}. Fix the environment and restart it.")
    st.stop()

# Page paths are relative to this script, wherever it is run from.
pages = [
    st.Page("views/draw.py", title="Draw", icon=":material/draw:", default=True),
    st.Page("views/history.py", title="History", icon=":material/history:"),
    st.Page("views/statistics.py", title="Statistics", icon=":material/bar_chart:"),
]
st.navigation(pages).run()
