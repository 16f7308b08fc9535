"""The Streamlit dashboard: `app.py` is the router, `app_pages/` the pages, the rest plain tested modules."""
