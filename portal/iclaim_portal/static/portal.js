// The portal's own script: live claim status (server-sent events) and the
// passkey ceremonies. Pages work without it except for passkeys.
"use strict";

(function () {
  const csrf = () => document.body.dataset.csrf;

  // Live status: the server sends the rendered status block at each change.
  function watch(section) {
    const source = new EventSource(section.dataset.events);
    source.addEventListener("state", (e) => { section.innerHTML = e.data; });
    source.addEventListener("done", () => source.close());
  }

  const b64u = {
    decode(s) {
      const pad = "=".repeat((4 - (s.length % 4)) % 4);
      const bin = atob((s + pad).replace(/-/g, "+").replace(/_/g, "/"));
      return Uint8Array.from(bin, (c) => c.charCodeAt(0)).buffer;
    },
    encode(buf) {
      const bin = String.fromCharCode(...new Uint8Array(buf));
      return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    },
  };

  async function post(url, body) {
    const resp = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: body === undefined ? "{}" : JSON.stringify(body),
      credentials: "same-origin",
    });
    return resp;
  }

  function credentialJson(cred) {
    const r = cred.response;
    const out = { id: cred.id, rawId: b64u.encode(cred.rawId), type: cred.type,
      clientExtensionResults: cred.getClientExtensionResults(), response: {
        clientDataJSON: b64u.encode(r.clientDataJSON) } };
    if (r.attestationObject) {
      out.response.attestationObject = b64u.encode(r.attestationObject);
      if (r.getTransports) out.response.transports = r.getTransports();
    } else {
      out.response.authenticatorData = b64u.encode(r.authenticatorData);
      out.response.signature = b64u.encode(r.signature);
      if (r.userHandle) out.response.userHandle = b64u.encode(r.userHandle);
    }
    return out;
  }

  function status(text) {
    const el = document.getElementById("passkey-status");
    if (el) el.textContent = text;
  }

  async function register(button) {
    const options = await (await post("/passkeys/options")).json();
    options.challenge = b64u.decode(options.challenge);
    options.user.id = b64u.decode(options.user.id);
    (options.excludeCredentials || []).forEach((c) => { c.id = b64u.decode(c.id); });
    const cred = await navigator.credentials.create({ publicKey: options });
    const resp = await post("/passkeys", credentialJson(cred));
    status(resp.ok ? button.dataset.ok || "OK" : button.dataset.failed || "Failed");
    if (resp.ok) window.location.reload();
  }

  async function signIn(button) {
    const options = await (await post("/signin/passkey/options")).json();
    options.challenge = b64u.decode(options.challenge);
    (options.allowCredentials || []).forEach((c) => { c.id = b64u.decode(c.id); });
    const cred = await navigator.credentials.get({ publicKey: options });
    const resp = await post("/signin/passkey", credentialJson(cred));
    if (resp.ok) window.location.assign(sameOrigin(button.dataset.next));
    else status(button.dataset.failed || "Failed");
  }

  // Where to go after sign-in: only a page of this portal. The URL parser drops
  // tabs and newlines and reads a backslash as "/", so the string is resolved as
  // the browser would before its origin is compared.
  function sameOrigin(next) {
    try {
      const url = new URL(next || "/", window.location.origin);
      if (url.origin === window.location.origin) return url.href;
    } catch (e) { /* not a URL: go home */ }
    return "/";
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-events]").forEach(watch);
    const reg = document.getElementById("passkey-register");
    if (reg) reg.addEventListener("click", () => register(reg).catch((e) => status(String(e))));
    const signin = document.getElementById("passkey-signin");
    if (signin && window.PublicKeyCredential) {
      signin.hidden = false;
      signin.addEventListener("click", () => signIn(signin).catch((e) => status(String(e))));
    }
  });
})();
