from django.db import models


class Signup(models.Model):
    """A user who signed up; the welcome email is sent by a task after the row commits."""

    email = models.EmailField()
    created_at = models.DateTimeField(auto_now_add=True)
    welcome_sent_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Signup({self.pk})"
