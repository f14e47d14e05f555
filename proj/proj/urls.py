from django.urls import path
from tasks import views

urlpatterns = [
    path("signup/", views.signup, name="signup"),
    path("healthz", views.healthz, name="healthz"),
]
