from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("", views.usage_list, name="usage-list"),
    path("export.csv", views.usage_export, name="usage-export"),
    path("models", views.usage_models, name="usage-models"),
    path("<int:pk>/breakdown", views.usage_breakdown, name="usage-breakdown"),
    # The channel form's Preview button (docs/pricing.md#price-preview): a new or a saved channel.
    path("price-preview/new", views.price_preview, name="price-preview-new"),
    path("price-preview/<int:channel_pk>", views.price_preview, name="price-preview"),
]
