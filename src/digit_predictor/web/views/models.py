"""The Models section of the Statistics page: which version is live, since when, its gate."""

from __future__ import annotations

import streamlit as st

from digit_predictor.web import model_registry, resources
from digit_predictor.web.data import DatabaseUnavailable


def render_models_section() -> None:
    st.subheader("Models")
    try:
        models = model_registry.load_models(resources.database())
    except DatabaseUnavailable:
        st.caption("The model registry cannot be read right now.")
        return
    champion = models.champion
    if champion is None:
        st.caption("No model is registered yet: the api registers its model when it starts.")
        return
    since = champion.promoted_at.strftime("%Y-%m-%d %H:%M %Z") if champion.promoted_at else "–"
    st.markdown(f"Live: **`{champion.version}`**, since {since}.")
    if champion.reason:
        st.caption(champion.reason)
    gate = model_registry.gate_frame(champion)
    if gate is not None:
        st.caption("Its gate: the champion it replaced against it, on the same data, same run.")
        st.dataframe(gate, hide_index=True, width="stretch")
    with st.expander(f"All versions ({len(models.versions)})"):
        st.dataframe(model_registry.versions_frame(models), hide_index=True, width="stretch")
