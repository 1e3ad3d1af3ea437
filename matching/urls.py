"""Routes of the matching app under /fhir/."""

from django.urls import path

from matching import views

urlpatterns = [
    path("Patient/$member-match", views.MemberMatchView.as_view(), name="member-match"),
    path("Group/$bulk-member-match", views.BulkMemberMatchView.as_view(), name="bulk-member-match"),
    path("Group", views.GroupSearchView.as_view(), name="group-search"),
    path("Group/_search", views.GroupSearchView.as_view(), name="group-search-post"),
    path("Group/<str:group_id>", views.GroupReadView.as_view(), name="group-read"),
]
