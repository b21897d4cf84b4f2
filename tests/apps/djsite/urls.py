from django.urls import path

from . import views

urlpatterns = [
    path("django/form", views.form),
    path("django/submit", views.submit),
    path("django/count", views.count),
    path("django/stream", views.stream),
]
