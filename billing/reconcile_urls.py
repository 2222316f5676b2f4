from django.urls import path

from billing import reconcile_views

app_name = "reconcile"

urlpatterns = [
    path("", reconcile_views.reconcile_list, name="run-list"),
    path("batches/<str:batch_id>/", reconcile_views.reconcile_batch_detail, name="batch"),
]
