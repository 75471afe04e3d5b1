// Sign-in page: password + TOTP, or password + passkey, through POST /auth/login (JSON).
(function () {
  "use strict";
  const form = document.getElementById("login-form");
  if (!form) return;
  const status = document.getElementById("login-status");
  const next = form.dataset.next || "/home";
  const say = (text) => { status.textContent = text; };
  async function post(body) {
    const r = await fetch("/auth/login", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    });
    let data = {};
    try { data = await r.json(); } catch (e) { data = {}; }
    return {status: r.status, data: data};
  }
  // The server explains a refusal in English: a page in another language says it in its own
  // words (its data- attributes), by kind of refusal.
  const english = (document.documentElement.lang || "en") === "en";
  function why(res) {
    if (english && res.data.message) return res.data.message;
    if (english && res.data.issue && res.data.issue[0]) return res.data.issue[0].diagnostics;
    if (res.status === 429) return form.dataset.throttled || form.dataset.failed;
    if (res.status === 403) return form.dataset.refused || form.dataset.failed;
    return form.dataset.failed;
  }
  function done(res) {
    if (res.status === 200) {
      if (res.data.setupRequired) location.assign("/account/setup");
      else location.assign(res.data.enrollmentOnly ? "/account?enrol=1" : next);
    } else {
      say(why(res));
      form.password.focus();
    }
  }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    say(form.dataset.working);
    const body = {username: form.username.value, password: form.password.value};
    if (form.otp.value) body.otp = form.otp.value.trim();
    done(await post(body));
  });
  const button = document.getElementById("passkey-login");
  if (button) button.addEventListener("click", async () => {
    if (!form.username.value || !form.password.value) { say(form.dataset.needPassword); return; }
    say(form.dataset.working);
    try {
      const o = await (await fetch("/auth/webauthn/login-options", {method: "POST"})).json();
      const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(o.publicKey);
      const cred = await navigator.credentials.get({publicKey: publicKey});
      done(await post({username: form.username.value, password: form.password.value,
        challengeId: o.challengeId, webauthn: cred.toJSON()}));
    } catch (e) {
      say(form.dataset.passkeyFailed);
    }
  });
})();
