"""Sign-in (password or passkey), sign-out, passkey registration, language."""

from __future__ import annotations

import json
from collections.abc import Awaitable

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from iclaim_portal.context import form_values, local_path, portal_of, signed_in, staff_of
from iclaim_portal.i18n import LOCALES
from iclaim_portal.passkeys import PasskeyRefused
from iclaim_portal.render import LANG_COOKIE, session_of, session_or_none
from iclaim_portal.security import END_SESSION
from iclaim_portal.staff import MIN_PASSWORD_LENGTH, ROLES, Staff, StaffChangeRefused


async def signin_page(request: Request) -> Response:
    portal = portal_of(request)
    if session_or_none(request) is None:
        # the form's CSRF token and the passkey challenge need a session: made here, not on every visit
        request.state.new_session = await portal.sessions.new()
    return portal.renderer.page(request, "signin.html", next=local_path(request.query_params.get("next")))


async def signin_password(request: Request) -> Response:
    portal = portal_of(request)
    async with request.form() as form:
        username = str(form.get("username", "")).strip()
        password = str(form.get("password", ""))
        next_path = local_path(str(form.get("next", "")))
    address = request.client.host if request.client else ""
    # Counted before the check (parallel guesses cannot all slip under the limit),
    # for any name: a locked unknown name is answered as a locked account is.
    if not portal.signins.begin(username, address):
        return portal.renderer.page(
            request, "signin.html", status_code=429, next=next_path, locked=True, username=username
        )
    staff = await portal.staff.check_password(username, password) if username and password else None
    if staff is None:
        known = await portal.staff.by_username(username) if username else None
        # only an existing account's name is kept: what else is typed here may be a password
        await portal.staff.log(None, "signin_failed", known.username if known else "")
        return portal.renderer.page(
            request, "signin.html", status_code=401, next=next_path, error=True, username=username
        )
    portal.signins.succeeded(username, address)
    request.state.new_session = await portal.sessions.signed_in(session_of(request), staff.id)
    await portal.staff.log(staff, "signin", method="password")
    return RedirectResponse(next_path, status_code=303)


async def passkey_signin_options(request: Request) -> Response:
    portal = portal_of(request)
    options, challenge = portal.passkeys.authentication_options()
    await portal.sessions.set_challenge(session_of(request).token, challenge)
    return Response(options, media_type="application/json")


async def passkey_signin(request: Request) -> Response:
    portal = portal_of(request)
    session = session_of(request)
    challenge = await portal.sessions.take_challenge(session.token)
    try:
        staff_id = await portal.passkeys.authenticate(
            (await request.body()).decode("utf-8", "replace"), challenge
        )
    except PasskeyRefused:
        await portal.staff.log(None, "signin_failed", method="passkey")
        return JSONResponse({"ok": False}, status_code=401)
    staff = await portal.staff.get(staff_id)
    request.state.new_session = await portal.sessions.signed_in(session, staff_id)
    await portal.staff.log(staff, "signin", method="passkey")
    return JSONResponse({"ok": True})


@signed_in()
async def signout(request: Request) -> Response:
    portal = portal_of(request)
    await portal.staff.log(staff_of(request), "signout")
    await portal.sessions.end(session_of(request).token)
    request.scope["state"][END_SESSION] = True
    return RedirectResponse("/signin", status_code=303)


@signed_in()
async def passkeys_page(request: Request) -> Response:
    portal = portal_of(request)
    count = await portal.passkeys.count(staff_of(request))
    return portal.renderer.page(request, "passkeys.html", passkey_count=count)


@signed_in()
async def passkey_register_options(request: Request) -> Response:
    portal = portal_of(request)
    options, challenge = await portal.passkeys.registration_options(staff_of(request))
    await portal.sessions.set_challenge(session_of(request).token, challenge)
    return Response(options, media_type="application/json")


@signed_in()
async def passkey_register(request: Request) -> Response:
    portal = portal_of(request)
    staff = staff_of(request)
    challenge = await portal.sessions.take_challenge(session_of(request).token)
    try:
        credential = json.loads(await request.body())
        await portal.passkeys.register(staff, credential, challenge)
    except (PasskeyRefused, ValueError):
        return JSONResponse({"ok": False}, status_code=400)
    await portal.staff.log(staff, "passkey_added")
    return JSONResponse({"ok": True})


async def set_language(request: Request) -> Response:
    lang = request.path_params["lang"]
    response = RedirectResponse(local_path(request.query_params.get("next")), status_code=303)
    if lang in LOCALES:
        response.set_cookie(
            LANG_COOKIE,
            lang,
            max_age=365 * 86400,
            samesite="strict",
            secure=portal_of(request).config.secure_cookies,
            httponly=True,
        )
    return response


@signed_in()
async def actions_page(request: Request) -> Response:
    portal = portal_of(request)
    rows = await portal.staff.recent_actions()
    return portal.renderer.page(request, "actions.html", actions=rows)


@signed_in(admin=True)
async def staff_page(request: Request) -> Response:
    return await _staff_form(request, {})


async def _staff_form(
    request: Request, values: dict[str, str], error: str = "", status_code: int = 200
) -> Response:
    portal = portal_of(request)
    return portal.renderer.page(
        request,
        "staff.html",
        status_code=status_code,
        members=await portal.staff.all(),
        roles=ROLES,
        values=values,
        error=error,
    )


@signed_in(admin=True)
async def add_staff(request: Request) -> Response:
    portal = portal_of(request)
    values = await form_values(request)
    username = values.get("username", "").strip()
    password = values.get("password", "")
    role = values.get("role", "")
    if not (username and len(username) <= 64 and username.replace(".", "").replace("-", "").isalnum()):
        return await _staff_form(request, values, "Usernames are letters, digits, dots and dashes.", 422)
    if role not in ROLES:
        return await _staff_form(request, values, "Choose a role.", 422)
    if len(password) < MIN_PASSWORD_LENGTH:
        return await _staff_form(request, values, "The password needs at least 12 characters.", 422)
    if await portal.staff.username_taken(username):
        return await _staff_form(request, values, "That username is taken.", 409)
    display = values.get("display_name", "").strip()[:100] or username
    member = await portal.staff.create(username, display, role, password)
    await portal.staff.log(staff_of(request), "staff_added", member.username, role=role)
    return RedirectResponse("/staff", status_code=303)


async def _staff_change(request: Request, change: Awaitable[Staff], action: str, **detail: str) -> Response:
    """Applies an admin's change to a member: refused (409, message on the page) or logged."""
    try:
        member = await change
    except StaffChangeRefused as refused:
        return await _staff_form(request, {}, str(refused), 409)
    await portal_of(request).staff.log(staff_of(request), action, member.username, **detail)
    return RedirectResponse("/staff", status_code=303)


@signed_in(admin=True)
async def change_role(request: Request) -> Response:
    username = request.path_params["username"]
    role = (await form_values(request)).get("role", "")
    if role not in ROLES:
        return await _staff_form(request, {}, "Choose a role.", 422)
    return await _staff_change(
        request, portal_of(request).staff.set_role(username, role), "staff_role_changed", role=role
    )


@signed_in(admin=True)
async def disable_staff(request: Request) -> Response:
    username = request.path_params["username"]
    if username == staff_of(request).username:
        return await _staff_form(request, {}, "You cannot disable your own account.", 409)
    return await _staff_change(request, portal_of(request).staff.disable(username), "staff_disabled")


ROUTES = [
    Route("/staff", staff_page, methods=["GET"]),
    Route("/staff", add_staff, methods=["POST"]),
    Route("/staff/{username}/role", change_role, methods=["POST"]),
    Route("/staff/{username}/disable", disable_staff, methods=["POST"]),
    Route("/signin", signin_page, methods=["GET"]),
    Route("/signin", signin_password, methods=["POST"]),
    Route("/signin/passkey/options", passkey_signin_options, methods=["POST"]),
    Route("/signin/passkey", passkey_signin, methods=["POST"]),
    Route("/signout", signout, methods=["POST"]),
    Route("/passkeys", passkeys_page, methods=["GET"]),
    Route("/passkeys/options", passkey_register_options, methods=["POST"]),
    Route("/passkeys", passkey_register, methods=["POST"]),
    Route("/lang/{lang}", set_language, methods=["GET"]),
    Route("/actions", actions_page, methods=["GET"]),
]
