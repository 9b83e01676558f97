"""The Streamlit web app: draw a digit, see the api's prediction, correct it, browse history."""
