"""Logging in and out of the test site, for tests/test_auth_e2e.py."""
from django.contrib.auth import authenticate, login
from django.http import HttpResponse
from django.views.decorators.http import require_POST


@require_POST
def log_in(request):
    user = authenticate(request, username=request.POST.get("username"),
                        password=request.POST.get("password"))
    if user is None:
        return HttpResponse("bad credentials", status=403, content_type="text/plain")
    login(request, user)
    # Something else in the session, for message.django_session to find.
    request.session["color"] = request.POST.get("color", "")
    return HttpResponse(user.get_username(), content_type="text/plain")


def whoami(request):
    return HttpResponse(request.user.get_username() or "anonymous", content_type="text/plain")


@require_POST
def change_password(request):
    """Without update_session_auth_hash: every other session of the user ends."""
    if not request.user.is_authenticated:
        return HttpResponse("login required", status=403, content_type="text/plain")
    request.user.set_password(request.POST["password"])
    request.user.save()
    return HttpResponse("changed", content_type="text/plain")
