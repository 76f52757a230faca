"""Load scenario against the demo behind fairgate (see README: "Load testing").

    locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 30s --host http://127.0.0.1:8080
"""

from __future__ import annotations

import random

from locust import HttpUser, between, task


class ApiIntegration(HttpUser):
    """A customer's integration calling the JSON API."""

    wait_time = between(0.5, 1.5)

    @task(5)
    def get_ticket(self) -> None:
        self.client.get(f"/api/v1/tickets/{random.randint(1, 500)}", name="/api/v1/tickets/{id}")

    @task(2)
    def list_tickets(self) -> None:
        self.client.get(f"/api/v1/tickets?page={random.randint(1, 25)}", name="/api/v1/tickets?page")

    @task(1)
    def create_ticket(self) -> None:
        self.client.post("/api/v1/tickets", json={"title": "printer on fire", "priority": "high"})


class PortalVisitor(HttpUser):
    """A person browsing the portal: a page, then its assets."""

    wait_time = between(2, 6)

    @task
    def browse(self) -> None:
        self.client.get("/portal/tickets", headers={"Accept": "text/html", "Accept-Language": "en"})
        self.client.get("/portal/static/app.css", name="/portal/static/*")
        self.client.get("/portal/static/app.js", name="/portal/static/*")
