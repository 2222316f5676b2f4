from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("", views.usage_list, name="usage-list"),
    path("export.csv", views.usage_export, name="usage-export"),
    path("models", views.usage_models, name="usage-models"),
    path("<int:pk>/breakdown", views.usage_breakdown, name="usage-breakdown"),
]
