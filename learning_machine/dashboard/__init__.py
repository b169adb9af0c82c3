"""The Streamlit dashboard: ``app.py`` (the pages) over ``views.py`` (the logic, plain functions of a gateway client)."""
