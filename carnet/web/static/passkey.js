// Passkey step-up and enrolment; the CSRF token travels in the X-CSRF-Token header.
(function () {
  "use strict";
  const status = document.getElementById("passkey-status");
  const say = (text) => { if (status) status.textContent = text; };
  async function call(path, csrf, body) {
    const r = await fetch(path, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(body || {})});
    let data = {};
    try { data = await r.json(); } catch (e) { data = {}; }
    return {status: r.status, data: data};
  }
  const why = (res) => (res.data.issue && res.data.issue[0]) ? res.data.issue[0].diagnostics : String(res.status);
  const stepUp = document.getElementById("passkey-step-up");
  if (stepUp) stepUp.addEventListener("click", async () => {
    try {
      const o = await (await fetch("/auth/webauthn/login-options", {method: "POST"})).json();
      const cred = await navigator.credentials.get(
        {publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(o.publicKey)});
      const res = await call("/auth/step-up", stepUp.dataset.csrf,
        {challengeId: o.challengeId, webauthn: cred.toJSON()});
      if (res.status === 200) location.assign(stepUp.dataset.next || "/home"); else say(why(res));
    } catch (e) { say(String(e.name || e)); }
  });
  const enrol = document.getElementById("passkey-enrol");
  if (enrol) enrol.addEventListener("click", async () => {
    try {
      const csrf = enrol.dataset.csrf;
      const o = await call("/auth/webauthn/register-options", csrf);
      if (o.status !== 200) { say(why(o)); return; }
      const cred = await navigator.credentials.create(
        {publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(o.data.publicKey)});
      const res = await call("/auth/webauthn/register", csrf,
        {challengeId: o.data.challengeId, credential: cred.toJSON(), label: enrol.dataset.label || "passkey"});
      if (res.status === 201) {
        if (res.data.setupDone) location.assign("/login?setup_done=1");
        else if (res.data.signInAgain) location.assign("/login?enrolled=1");
        else location.reload();
      } else { say(why(res)); }
    } catch (e) { say(String(e.name || e)); }
  });
})();
