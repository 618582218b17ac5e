from django.contrib.auth import authenticate, login
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def login_view(request):
    """POST form username, password: a Django session, its id in the cookie and the body
    (a way to get a `sessionid` for the WebSocket handshake without bench_sessions)."""
    if request.method != "POST":
        return JsonResponse({"detail": "POST only"}, status=405)
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        return JsonResponse({"detail": "bad credentials"}, status=401)
    login(request, user)
    return JsonResponse({"sessionid": request.session.session_key})
