"""The Celery application (distributed executor). The embedded executor does not import it."""
