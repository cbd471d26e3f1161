"""G-DIG Studio entry point: `streamlit run app.py`."""

import streamlit as st

st.set_page_config(page_title="G-DIG Studio", layout="wide")
st.title("G-DIG Studio")
st.write(
    "Choose instruction-tuning data by its measured influence on a model. The scoring engine is ready "
    "(`python -m gdig score`); the interactive pages arrive with the app milestone."
)
