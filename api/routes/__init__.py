"""Every router the app serves; add yours with one line."""

from __future__ import annotations

from fastapi import APIRouter

from api.routes import (
    admin_inbound,
    auth,
    chat,
    course_pages,
    flash,
    health,
    marking,
    pages,
    receipts,
    similarity_webhook,
    staff,
    staff_pages,
    submissions,
    topics,
    wait,
)
from api.routes import tus as resumable_uploads

routers: list[APIRouter] = [
    health.router,
    auth.router,
    submissions.router,
    resumable_uploads.router,
    topics.router,
    staff.router,
    flash.router,
    pages.router,
    staff_pages.router,
    similarity_webhook.router,
    receipts.router,
    chat.router,
    chat.unread_router,
    course_pages.router,
    marking.router,
    admin_inbound.router,
    wait.router,
]
