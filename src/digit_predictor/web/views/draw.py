"""Draw page: canvas, Predict / Clear, the result, feedback, why, and today's high score.

The canvas and the answer live in one `st.fragment`: a stroke (and, with "Predict as I draw"
on, its live answer) reruns only them, not the page. Pressing Predict stores the prediction and
reruns the page, since today's high score may have changed.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from digit_predictor.web import actions, canvas, charts, data, images, resources
from digit_predictor.web.actions import HighScoreState, Outcome
from digit_predictor.web.api_client import ApiProblem, PredictionResult
from digit_predictor.web.ui import UNEXPECTED, a_digit, guarded, log

DIGITS = list(range(10))
WHY_SCALE = 7  # 196x196: shown at its own size, so no resampling blurs the pixels
WHY_LEGEND = (
    "Red: ink that made the model think of this digit. Blue: ink that spoke against it. "
    "On the 28×28 image the model saw (integrated gradients)."
)


def _state() -> Any:
    state = st.session_state
    state.setdefault("canvas_round", 0)
    state.setdefault("outcome", None)
    state.setdefault("result", None)
    state.setdefault("answers", {})  # prediction id -> the true digit the person saved
    state.setdefault("feedback_note", None)  # (kind, text) about the last feedback attempt
    state.setdefault("live", False)  # the "Predict as I draw" toggle
    state.setdefault("answered_drawing", None)  # drawing_key of what the shown answer is for
    state.setdefault("live_strokes", 0)  # strokes on the canvas when the live answer was asked
    state.setdefault("why", {})  # (prediction id, digit) -> its explanation overlay (PNG)
    if "high_score" not in state:
        state.high_score = HighScoreState()
    return state


def _clear() -> None:
    state = _state()
    state.canvas_round += 1
    state.outcome = None
    state.result = None
    state.feedback_note = None
    state.answered_drawing = None


def _save_answer(prediction_id: int, true_digit: int | None) -> None:
    state = _state()
    if true_digit is None:
        state.feedback_note = ("warning", "Pick the digit you drew first.")
        return
    try:
        data.save_feedback(resources.database(), prediction_id, true_digit)
    except data.DatabaseUnavailable:
        state.feedback_note = (
            "error",
            "Your answer could not be saved: the database cannot be reached. "
            "Please try again in a moment.",
        )
        return
    except data.PredictionNotFound:
        state.feedback_note = ("error", "This prediction is no longer in the database.")
        return
    except Exception:  # a callback runs outside the page's guard: never let a traceback out
        log.exception("saving feedback failed")
        state.feedback_note = ("error", UNEXPECTED)
        return
    state.answers[prediction_id] = true_digit
    state.feedback_note = ("success", f"Thank you! Saved: it was {a_digit(true_digit)}.")


def _save_correction(prediction_id: int) -> None:
    _save_answer(prediction_id, st.session_state.get(f"truth-{prediction_id}"))


def _fetch_high_score() -> data.HighScore | None:
    return data.high_score(resources.database(), resources.settings().tz)


# Drawings flagged as not a digit are stored but never the high score: "no predictions" would
# be untrue after one.
NO_DIGIT_YET = "No digit drawn yet today"


def _show_high_score(state: Any) -> None:
    tracker: HighScoreState = state.high_score
    tracker.refresh_if_due(_fetch_high_score)
    tz = resources.settings().high_score_tz
    with st.container(border=True, key="high-score"):
        if not tracker.available:
            st.markdown("**Today's high score**")
            st.caption("Unavailable right now: the database cannot be reached.")
        elif tracker.value is None:
            st.markdown("**Today's high score**")
            st.caption(f"{NO_DIGIT_YET} ({tz}). Be the first!")
        else:
            best = tracker.value
            st.metric("Today's high score", f"{best.confidence:.1%}")
            st.caption(f"{a_digit(best.digit)}, at {best.created_at:%H:%M} ({tz})")


def _show_outcome(outcome: Outcome | None) -> None:
    if outcome is None or outcome.message is None:
        return
    if outcome.kind == "warning":
        st.warning(outcome.message, icon=":material/edit:")
    else:
        st.error(outcome.message, icon=":material/cloud_off:")


NOT_A_DIGIT = "That does not look like a digit."
NOT_A_DIGIT_HINT = "Draw one digit, 0-9, large and on its own, then press Predict again."


def _show_answer(result: PredictionResult) -> None:
    """The digit, big; or, for a drawing that is not a digit, that plainly, the guess small."""
    if not result.is_digit:
        st.warning(f"**{NOT_A_DIGIT}** {NOT_A_DIGIT_HINT}", icon=":material/help:")
        st.markdown(
            f'<div class="best-guess" aria-label="best guess">Best guess, if it is a digit: '
            f"<b>{int(result.digit)}</b> ({result.confidence:.1%})</div>",
            unsafe_allow_html=True,
        )
        return
    st.markdown(
        f'<div class="predicted-digit" aria-label="predicted digit" '
        f'style="font-size:6rem;font-weight:700;line-height:1">{int(result.digit)}</div>',
        unsafe_allow_html=True,
    )
    st.markdown(f"Confidence **{result.confidence:.1%}**")


def _show_result(result: PredictionResult) -> None:
    top, picture = st.columns([3, 2])
    with top:
        _show_answer(result)
        if result.latency_ms is not None:
            st.caption(f"model {result.model_version} · answered in {result.latency_ms:.0f} ms")
    with picture:
        if result.model_input_png is not None:
            st.image(
                images.enlarge(result.model_input_png, 112),
                caption="What the model saw (28×28)",
            )
    st.altair_chart(charts.probability_chart(result.probabilities, result.digit), width="stretch")


def _show_feedback(state: Any, result: PredictionResult) -> None:
    if result.id is None:
        st.info(actions.QUEUED, icon=":material/schedule:")
        return
    pid = result.id
    st.markdown("**Was it right?**")
    saved = state.answers.get(pid)
    st.button(
        f"Yes, it was {a_digit(result.digit)}",
        key=f"right-{pid}",
        icon=":material/check:",
        on_click=_save_answer,
        args=(pid, result.digit),
    )
    st.segmented_control("No, it was:", DIGITS, key=f"truth-{pid}", format_func=str)
    st.button(
        "Save correction",
        key=f"save-{pid}",
        on_click=_save_correction,
        args=(pid,),
    )
    note = state.feedback_note
    if note is not None:
        kind, text = note
        if kind == "success":
            st.success(f"{text} You can change your answer at any time.", icon=":material/done:")
        elif kind == "warning":
            st.warning(text)
        else:
            st.error(text)
    elif saved is not None:
        st.caption(f"Your answer: {saved}")


def _predict(state: Any, drawing: canvas.Drawing) -> bool:
    """Predict and store (the Predict button); True when a prediction was stored or queued."""
    with st.spinner("Predicting…"):
        outcome = actions.predict_drawing(resources.api_client(), drawing)
    state.outcome = outcome
    state.result = outcome.result  # a failed attempt hides the previous result
    state.feedback_note = None
    state.answered_drawing = actions.drawing_key(drawing)
    if outcome.result is None:
        return False
    log.info("predicted %s", outcome.result.digit)
    state.high_score.invalidate()
    return True


def _preview_if_changed(state: Any, drawing: canvas.Drawing) -> None:
    """With "Predict as I draw" on, answer a drawing the page has not answered yet (not stored).

    The canvas sends a drawing 200 ms after the last stroke ends (its own debounce), so a quick
    run of strokes is one request; a drawing already answered (the same bytes) is not sent again.
    """
    key = actions.drawing_key(drawing)
    if key is None or key == state.answered_drawing:
        return
    outcome = actions.preview_drawing(resources.api_client(), drawing)
    state.outcome = outcome
    state.result = outcome.result
    state.feedback_note = None
    state.answered_drawing = key
    state.live_strokes = drawing.strokes


def _show_live_note(state: Any) -> None:
    strokes = state.live_strokes
    st.caption(
        f"Live answer for {strokes} stroke{'' if strokes == 1 else 's'}: not saved. "
        "Press Predict to keep it, say whether it was right and see why.",
        help="Predict as you draw asks the model after every stroke; nothing is stored.",
    )


def _overlay(state: Any, prediction_id: int, digit: int) -> bytes | str:
    """The explanation picture for (prediction, digit), fetched once per page session."""
    cache: dict[tuple[int, int], bytes] = state.why
    key = (prediction_id, digit)
    if key not in cache:
        try:
            cache[key] = resources.api_client().explanation_overlay(
                prediction_id, digit, scale=WHY_SCALE
            )
        except ApiProblem as exc:
            log.warning("explanation failed: %s", exc.message)
            return exc.message  # not kept: the next rerun tries again
    return cache[key]


def _show_why(state: Any, result: PredictionResult) -> None:
    """The "Why?" control: the attribution map of the answer, and of the person's answer."""
    if result.id is None:
        return
    if not st.toggle("Why?", key=f"why-{result.id}", help="Which ink made the model say this"):
        return
    shown = [(result.digit, f"Why {a_digit(result.digit)}")]
    truth = state.answers.get(result.id)
    if truth is not None and truth != result.digit:
        shown.append((truth, f"What speaks for {a_digit(truth)} (your answer)"))
    with st.container(key="why"):
        for column, (digit, caption) in zip(st.columns(2), shown, strict=False):
            with column:
                picture = _overlay(state, result.id, digit)
                if isinstance(picture, bytes):
                    st.image(picture, caption=caption, width=28 * WHY_SCALE)
                else:
                    st.warning(f"{caption}: {picture}")
        st.caption(WHY_LEGEND)


@st.fragment
def _canvas_and_answer() -> None:
    """Everything a stroke changes; Streamlit reruns just this on each stroke."""
    # A fragment rerun does not pass through the page's guard: this one keeps tracebacks out.
    guarded(_draw_and_answer)


def _draw_and_answer() -> None:
    state = _state()
    left, right = st.columns([2, 3], gap="large")
    with left:
        st.caption("Draw one digit, 0 to 9, with the mouse or a finger, then press Predict.")
        drawing = canvas.draw_canvas(key=f"canvas-{state.canvas_round}")
        st.toggle(
            "Predict as I draw",
            key="live",
            help="The answer follows every stroke; it is only saved when you press Predict.",
        )
        predict_col, clear_col = st.columns(2)
        predict = predict_col.button("Predict", type="primary", key="predict", width="stretch")
        clear_col.button("Clear", key="clear", on_click=_clear, width="stretch")
        predicted = _predict(state, drawing) if predict else False
        if not predict and state.live:
            _preview_if_changed(state, drawing)
    with right:
        _show_outcome(state.outcome)
        result: PredictionResult | None = state.result
        if result is not None:
            if result.preview:
                # Above the answer: it reaches the browser first and says what the answer is.
                _show_live_note(state)
            _show_result(result)
            if not result.preview:
                _show_why(state, result)
                _show_feedback(state, result)
        elif state.outcome is None:
            st.info("Your prediction appears here.", icon=":material/arrow_back:")
    if predicted:
        # Today's high score (outside this fragment) may have changed: rerun the whole page.
        st.rerun(scope="app")


def render() -> None:
    state = _state()
    heading, high_score = st.columns([3, 1], vertical_alignment="bottom")
    heading.title("Draw a digit")
    _canvas_and_answer()
    # Filled last: the canvas and the answer reach the browser before the high score query runs.
    with high_score:
        _show_high_score(state)


guarded(render)
