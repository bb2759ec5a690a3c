"""Every router the app serves; add yours with one line."""

from __future__ import annotations

from fastapi import APIRouter

from api.routes import auth, flash, health, pages, similarity_webhook, staff, staff_pages, submissions, topics

routers: list[APIRouter] = [
    health.router,
    auth.router,
    submissions.router,
    topics.router,
    staff.router,
    flash.router,
    pages.router,
    staff_pages.router,
    similarity_webhook.router,
]
