"""The inference service: FastAPI app hosting the CNN, logging every prediction to PostgreSQL."""
