// One script every driftline page shares: asks for the API token once, keeps it for the browser
// session (sessionStorage, never the URL or a cookie), and sends it with every API call. A page
// includes it, gives an element id="driftline-auth" for the sign-in bar, and calls driftline.call().
"use strict";
(() => {
  const KEY = "driftline-token";
  const listeners = [];

  // A link may carry the token in its fragment (never sent to the server): keep it, then drop it.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem(KEY, fragment.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }

  const token = () => sessionStorage.getItem(KEY) || "";

  function element(tag, props, ...children) {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  }

  function bar() {
    const host = document.getElementById("driftline-auth");
    if (!host || host.childElementCount) return host;
    const input = element("input", { id: "driftline-token", type: "password", autocomplete: "off",
                                      placeholder: "API token (driftline tokens add ...)" });
    const save = element("button", { id: "driftline-token-save", type: "button", textContent: "Sign in" });
    const forget = element("button", { id: "driftline-token-forget", type: "button", textContent: "Sign out" });
    const who = element("span", { id: "driftline-who" });
    save.addEventListener("click", () => {
      if (input.value.trim()) sessionStorage.setItem(KEY, input.value.trim());
      input.value = "";
      whoami();
    });
    forget.addEventListener("click", () => { sessionStorage.removeItem(KEY); whoami(); });
    host.append(element("label", {}, "Token ", input), save, forget, who);
    return host;
  }

  async function call(method, url, body) {
    const headers = { "Content-Type": "application/json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    const init = { method, headers };
    if (body !== undefined) init.body = JSON.stringify(body);
    const answer = await fetch(url, init);
    const data = await answer.json().catch(() => ({}));
    if (answer.status === 401) {
      bar();
      document.getElementById("driftline-token")?.focus();
    }
    if (!answer.ok) throw new Error(data.error || `${answer.status} ${answer.statusText}`);
    return data;
  }

  async function whoami() {
    bar();
    const who = document.getElementById("driftline-who");
    let principal = null;
    let problem = "";
    if (token()) {
      try {
        principal = await call("GET", "/auth/whoami");
      } catch (err) {
        sessionStorage.removeItem(KEY);  // refused: ask again rather than send it on every call
        problem = `: ${err.message}`;
      }
    }
    if (who) who.textContent = principal ? `signed in as ${principal.name} (${principal.role})` : `not signed in${problem}`;
    listeners.forEach((fn) => fn(principal));
    return principal;
  }

  window.driftline = { call, token, whoami, onSignIn: (fn) => listeners.push(fn) };
  document.addEventListener("DOMContentLoaded", whoami);
})();
