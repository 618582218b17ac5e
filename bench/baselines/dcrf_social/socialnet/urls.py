from django.urls import path

from posts import views

urlpatterns = [
    path("login/", views.login_view),  # POST username, password -> {"sessionid": ...}
]
