from django.urls import path

from . import auth_views, views

urlpatterns = [
    path("django/form", views.form),
    path("django/submit", views.submit),
    path("django/count", views.count),
    path("django/stream", views.stream),
    path("django/notify", views.notify),
    path("django/login", auth_views.log_in),
    path("django/whoami", auth_views.whoami),
    path("django/password", auth_views.change_password),
]
