// Babel Queue console: live regions and confirmations. No framework, no build step.
"use strict";

// An element with data-poll="URL" is replaced by the HTML at URL every data-every ms.
function poll(el) {
  const every = parseInt(el.dataset.every || "3000", 10);
  const tick = async () => {
    try {
      const response = await fetch(el.dataset.poll, {credentials: "same-origin"});
      if (response.redirected || response.status === 401) {
        window.location.reload();  // the session ended: the server sends us to the login
        return;
      }
      if (response.ok) {
        el.innerHTML = await response.text();
        el.dataset.updated = new Date().toISOString();
      }
    } catch (err) {
      // the api is restarting or unreachable: try again on the next tick
    }
    window.setTimeout(tick, every);
  };
  window.setTimeout(tick, every);
}

// A form with data-confirm="question" asks before it is sent.
function confirmSubmit(form) {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-poll]").forEach(poll);
  document.querySelectorAll("form[data-confirm]").forEach(confirmSubmit);
});
