"""The admin's CSS is served by the web process itself (gunicorn serves no static files)."""


def test_admin_css_is_served_without_collectstatic(client):
    response = client.get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
