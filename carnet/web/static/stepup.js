// Step-up for access-widening forms (form[data-step-up]): before the form is sent, the person
// proves their passkey in THIS session (POST /auth/step-up/options, navigator.credentials.get,
// POST /auth/step-up/proof); in a demo a one-time code may be given instead. The server refuses
// the form without that proof: this script only asks for it first.
(function () {
  "use strict";
  const dialog = document.getElementById("step-up-dialog");
  if (!dialog) return;
  const status = dialog.querySelector("[data-step-up-status]");
  const codeBox = dialog.querySelector("[data-step-up-code]");
  const codeInput = dialog.querySelector("input[name=step_up_otp]");
  const passkeyButton = dialog.querySelector("[data-step-up-passkey]");
  const codeButton = dialog.querySelector("[data-step-up-code-submit]");
  const cancelButton = dialog.querySelector("[data-step-up-cancel]");
  let pending = null; // {form, submitter, csrf}
  const say = (text) => { status.textContent = text; };
  const refusedText = dialog.dataset.refused || "Not confirmed.";

  async function post(path, csrf, body) {
    const r = await fetch(path, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(body || {})});
    let data = {};
    try { data = await r.json(); } catch (e) { data = {}; }
    return {status: r.status, data: data};
  }
  const why = (res) => (res.data.issue && res.data.issue[0]) ? res.data.issue[0].diagnostics : String(res.status);

  function proceed() {
    const {form, submitter} = pending;
    pending = null;
    if (dialog.open) dialog.close();
    form.dataset.stepUpProven = "1";
    if (submitter) form.requestSubmit(submitter); else form.requestSubmit();
  }

  async function withPasskey() {
    if (!pending) return;
    say(dialog.dataset.waiting || "…");
    try {
      const o = await post("/auth/step-up/options", pending.csrf);
      if (o.status !== 200) { say(refusedText + " " + why(o)); return; }
      if (o.data.totp) { codeBox.hidden = false; codeInput.focus(); }
      if (!o.data.publicKey) { say(o.data.totp ? "" : (dialog.dataset.noPasskey || "")); return; }
      const cred = await navigator.credentials.get(
        {publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(o.data.publicKey)});
      const res = await post("/auth/step-up/proof", pending.csrf,
        {challengeId: o.data.challengeId, webauthn: cred.toJSON()});
      if (res.status === 200) proceed(); else say(refusedText + " " + why(res));
    } catch (e) { say(refusedText + " " + String(e.name || e)); }
  }

  async function withCode() {
    if (!pending) return;
    const res = await post("/auth/step-up/proof", pending.csrf, {otp: codeInput.value.trim()});
    codeInput.value = "";
    if (res.status === 200) proceed(); else say(refusedText + " " + why(res));
  }

  passkeyButton.addEventListener("click", withPasskey);
  codeButton.addEventListener("click", withCode);
  cancelButton.addEventListener("click", () => { pending = null; dialog.close(); });

  document.querySelectorAll("form[data-step-up]").forEach((form) => {
    form.addEventListener("submit", async (event) => {
      if (form.dataset.stepUpProven === "1") { delete form.dataset.stepUpProven; return; }
      event.preventDefault();
      const field = form.querySelector("input[name=csrf_token]");
      pending = {form: form, submitter: event.submitter || null, csrf: field ? field.value : ""};
      // A proof of this session from the last minutes still stands: no second touch needed.
      try {
        const r = await fetch("/auth/step-up", {credentials: "same-origin"});
        if (r.status === 200 && (await r.json()).fresh) { proceed(); return; }
      } catch (e) { /* ask below */ }
      say("");
      dialog.showModal();
      withPasskey();
    });
  });
})();
