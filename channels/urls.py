from django.urls import path

from channels import views

app_name = "channels"

urlpatterns = [
    path("", views.channel_list, name="channel-list"),
    path("new", views.channel_create_view, name="channel-create"),
    path("<int:pk>/", views.channel_detail, name="channel-detail"),
    path("<int:pk>/delete", views.channel_delete_dialog, name="channel-delete"),
    path("card-form", views.card_form, name="card-form"),
    path("interval-row", views.interval_row, name="interval-row"),
    path("catalog-intervals", views.catalog_intervals, name="catalog-intervals"),
    path("mapping-row", views.mapping_row, name="mapping-row"),
    path("model-pricing", views.pricing_defaults, name="pricing-defaults"),
]
