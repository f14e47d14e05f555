class ExternalServiceError(Exception):
    """A call to a third-party service failed in a way worth retrying (5xx, timeout).

    A plain Exception subclass with message-only args, so Celery's JSON result backend can
    store it and rebuild it on the producer side.
    """
