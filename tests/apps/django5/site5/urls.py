import platform

import django
from django.http import HttpResponse
from django.urls import path


def index(request):
    return HttpResponse(f"django {django.get_version()} on python {platform.python_version()}\n")


urlpatterns = [path("", index)]
