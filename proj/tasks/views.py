from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from tasks.services import register_signup


def _email_from(request: HttpRequest) -> str:
    if request.content_type == "application/json":
        try:
            payload = json.loads(request.body or b"{}")
        except ValueError:
            return ""
        return str(payload.get("email", "")) if isinstance(payload, dict) else ""
    return request.POST.get("email", "")


# A JSON endpoint for scripts and the demo's curl examples; there is no session login in
# the demo for CSRF to protect, so it is exempt. A real site would keep CSRF or use tokens.
@csrf_exempt
@require_POST
def signup(request: HttpRequest) -> HttpResponse:
    email = _email_from(request).strip()
    try:
        validate_email(email)
    except ValidationError:
        return JsonResponse({"error": "a valid email is required"}, status=400)
    row = register_signup(email)
    return JsonResponse({"id": row.pk}, status=201)


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok\n", content_type="text/plain")
