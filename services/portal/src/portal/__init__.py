"""Portal: the FastAPI application that hosts the REST API (and later the dashboards)."""
