# Importing the app here makes shared_task bind to it as soon as Django starts, in the web
# process and in the worker alike (the pattern Celery documents for Django projects).
from .celery import app as celery_app

__all__ = ("celery_app",)
