// The verify page's script: reads the file a person chose or dropped, asks the node that served the page to
// check it (POST v1/verify, the offline check against the node's genesis file), and shows the verdict in
// plain words. The file is a proof bundle (ler prove) or a W3C Verifiable Credential / Open Badge (ler export):
// for a credential the node answers a report of its parts (ler/vc.py CredentialReport) with the verification
// result of the bundle it carries, which is shown as a bundle's is.
//
// Everything that comes from the file or from the node reaches the page as text: the el() helper only ever
// sets textContent and a fixed set of attributes, never innerHTML. The page's Content Security Policy
// (node/verify_page.py) forbids inline script as a second line of defence.
"use strict";

(() => {
  const MAX_BYTES = 4 * 1024 * 1024; // ler/bundle.py MAX_BUNDLE_BYTES
  const BUNDLE_FORMAT = "ler-bundle/1";

  // Verdicts as ler/bundle.py names them, worst first. Colour is never the only sign: each has a word and
  // an icon, and the icon is hidden from screen readers since the word says it.
  const VERDICTS = {
    "tampered": { title: "TAMPERED", icon: "✗" },
    "wrong-network": { title: "WRONG NETWORK", icon: "≠" },
    "revoked": { title: "REVOKED", icon: "✗" },
    "expired": { title: "EXPIRED", icon: "!" },
    "unaccredited": { title: "NOT ACCREDITED", icon: "!" },
    "self-asserted": { title: "SELF-ASSERTED", icon: "i" },
    "valid": { title: "VALID", icon: "✓" },
  };

  // The checks ler/bundle.py runs, named for a person rather than a programmer.
  const CHECK_LABELS = {
    "format": "Readable proof file",
    "network": "Made for this network",
    "validator set": "Network authorities",
    "head committed": "Confirmed by the network",
    "record": "Record proof",
    "issuer signature": "Signed by the issuer",
    "disclosed claims": "Details belong to the record",
    "anchored": "Written on the ledger",
    "issuer accredited": "Issuer accredited",
    "issuer now": "Issuer today",
    "endorsements": "Endorsements",
    "not revoked": "Not revoked",
    "not expired": "Not expired",
  };

  const network = { chainId: null, authorities: [], fingerprint: null };

  // --- small helpers -------------------------------------------------------------------------------------

  /** An element with text children only: strings become text nodes, never markup. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const hidden = (text) => el("span", { class: "visually-hidden" }, text);
  const quoted = (text) => `“${text}”`;

  const DATE_FORMAT = new Intl.DateTimeFormat("en-GB", {
    timeZone: "UTC", day: "numeric", month: "long", year: "numeric", hour: "2-digit", minute: "2-digit",
  });

  // The latest time a JavaScript Date holds (year 275760); a ledger time may lie far beyond it.
  const MAX_DATE_MS = 8.64e15;

  function when(ms) {
    if (typeof ms !== "number" || !Number.isFinite(ms)) return "an unknown time";
    if (Math.abs(ms) > MAX_DATE_MS) return `a time after the year 275760 (${ms} ms after 1970)`;
    return `${DATE_FORMAT.format(new Date(ms))} UTC`;
  }

  function networkName(chainId) {
    return chainId ? `network ${quoted(chainId)}` : "this node’s network";
  }

  function plural(n, one, many) {
    return `${n} ${n === 1 ? one : many}`;
  }

  // --- the network this node checks against ---------------------------------------------------------------

  async function loadNetwork() {
    const line = document.getElementById("network");
    try {
      const resp = await fetch("v1/genesis", { headers: { Accept: "application/json" } });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      const genesis = await resp.json();
      network.chainId = typeof genesis.chain_id === "string" ? genesis.chain_id : null;
      network.authorities = Array.isArray(genesis.authorities)
        ? genesis.authorities.map((a) => (a && typeof a.name === "string" ? a.name : "")).filter(Boolean)
        : [];
    } catch (err) {
      line.replaceChildren("This node did not say which network it checks against; a result will still name " +
        "the network the file was made for.");
      return;
    }
    try {
      const resp = await fetch("v1/status", { headers: { Accept: "application/json" } });
      const status = resp.ok ? await resp.json() : null;
      if (status && typeof status.genesis_hash === "string") network.fingerprint = status.genesis_hash.slice(0, 16);
    } catch (err) {
      // The fingerprint is a detail for experts; the network's name is what matters.
    }
    const founders = network.authorities.length
      ? ` Its genesis file names ${plural(network.authorities.length, "founding authority", "founding authorities")}: ` +
        `${network.authorities.join(", ")}.`
      : "";
    line.replaceChildren(
      "Files are checked against the genesis file of ", el("strong", {}, networkName(network.chainId)), ".",
      founders,
      network.fingerprint ? ` Genesis fingerprint: ${network.fingerprint}…` : "",
    );
  }

  // --- reading the file ----------------------------------------------------------------------------------

  /** What the file looks like, before anyone checks it: a proof bundle, a credential, or something else. */
  function classify(text) {
    let obj;
    try {
      obj = JSON.parse(text);
    } catch (err) {
      // Not JSON. A bundle with one character changed may well be that: let the node say so.
      return { kind: text.includes(BUNDLE_FORMAT) ? "bundle" : "not-json" };
    }
    if (obj === null || typeof obj !== "object" || Array.isArray(obj)) return { kind: "unknown" };
    if (obj.format === BUNDLE_FORMAT || "head" in obj || "records" in obj || "genesis_hash" in obj) {
      return { kind: "bundle" };
    }
    const types = Array.isArray(obj.type) ? obj.type : [obj.type];
    if ("@context" in obj || "credentialSubject" in obj || types.includes("VerifiableCredential")) {
      return { kind: "credential" };
    }
    return { kind: "unknown" };
  }

  class CheckError extends Error {}

  async function postVerify(body) {
    let resp;
    try {
      resp = await fetch("v1/verify", {
        method: "POST", body, headers: { "Content-Type": "application/json", Accept: "application/json" },
      });
    } catch (err) {
      throw new CheckError("the node could not be reached");
    }
    let answer = null;
    try {
      answer = await resp.json();
    } catch (err) {
      answer = null;
    }
    if (!resp.ok) {
      const reason = answer && typeof answer.error === "string" ? answer.error : `HTTP status ${resp.status}`;
      throw new CheckError(reason);
    }
    const understood = isCredentialReport(answer)
      ? answer.ledger === null || isBundleResult(answer.ledger)
      : isBundleResult(answer);
    if (!understood) throw new CheckError("the node gave an answer this page does not understand");
    return answer;
  }

  const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);
  const isBundleResult = (value) => isObject(value) && typeof value.verdict === "string" &&
    Array.isArray(value.checks);
  const isCredentialReport = (value) => isObject(value) && value.kind === "credential" &&
    typeof value.valid === "boolean" && isObject(value.parts) && Array.isArray(value.checks) && "ledger" in value;

  const formatReadable = (result) => result.checks.some((c) => c && c.check === "format" && c.pass === true);
  // The first failed check among those behind the verdict: the bundle's own, or one of a record whose
  // verdict it is (in a stack, an earlier record may fail a check that only makes it revoked, say).
  const firstFailure = (result) => {
    const failed = result.checks.filter((c) => c && c.pass === false);
    const records = Array.isArray(result.records) ? result.records : [];
    const behind = (c) => c.record === null || c.record === undefined || !records[c.record] ||
      records[c.record].verdict === result.verdict;
    return failed.find(behind) || failed[0];
  };

  async function checkFile(file) {
    const name = file.name || "the file";
    showBusy(name);
    try {
      if (file.size > MAX_BYTES) {
        showNotice("NOT A PROOF FILE", "?", `${quoted(name)} is larger than any proof file (${Math.round(file.size / 1024)} KB); ` +
          "nothing in it was checked.");
        return;
      }
      const bytes = new Uint8Array(await file.arrayBuffer());
      const text = new TextDecoder("utf-8").decode(bytes);
      const seen = classify(text);
      if (seen.kind === "not-json") {
        showNotice("NOT A PROOF FILE", "?", `${quoted(name)} is not a proof file, so nothing in it was checked. ` +
          "A proof file is the .json file a record’s holder makes with “ler prove”.");
        return;
      }
      // The exact bytes go to the node: a bundle is canonical JSON, and any change to it is a change; a
      // credential's signature covers every member of it.
      const result = await postVerify(bytes);
      if (isCredentialReport(result)) {
        showCredential(result, name);
        return;
      }
      if (seen.kind === "bundle" || formatReadable(result)) {
        showResult(result, name);
        return;
      }
      if (seen.kind === "credential") {
        showNotice("NOT CHECKED HERE", "i", "This looks like a credential, but not a W3C Verifiable Credential " +
          "the node can check: it has no @context, no signature (proof) and no VerifiableCredential type. " +
          "Nothing in it was checked.");
        return;
      }
      const failed = firstFailure(result);
      showNotice("NOT A PROOF FILE", "?", `${quoted(name)} is not a proof file, so nothing in it was checked. ` +
        "A proof file is the .json file a record’s holder makes with “ler prove”.",
        failed ? `What the node found: ${failed.detail}` : null);
    } catch (err) {
      const reason = err instanceof CheckError ? err.message : "the file could not be read";
      showNotice("COULD NOT CHECK", "?", `The file was not checked: ${reason}. Nothing was decided about it; ` +
        "please try again.");
    }
  }

  // --- showing the result --------------------------------------------------------------------------------

  const resultBox = () => document.getElementById("result");

  function showBusy(name) {
    const box = resultBox();
    box.setAttribute("aria-busy", "true");
    box.replaceChildren(el("p", { class: "placeholder" }, `Checking ${quoted(name)}…`));
  }

  /** Put the verdict banner (announced: it sits in the live region) and the details in place. */
  function show(banner, details) {
    const box = resultBox();
    box.replaceChildren(banner, ...details);
    box.setAttribute("aria-busy", "false");
    const title = document.getElementById("verdict-title");
    if (title) title.focus();
  }

  function banner(tone, title, icon, summary, ...more) {
    return el("div", { class: `verdict tone-${tone}`, "data-verdict": tone },
      el("div", { class: "verdict-icon", "aria-hidden": "true" }, el("span", {}, icon)),
      el("div", { class: "verdict-body" },
        el("h3", { class: "verdict-title", id: "verdict-title", tabindex: "-1" }, hidden("Verdict: "), title),
        el("p", { class: "verdict-summary" }, summary),
        more.filter(Boolean).map((line) => el("p", { class: "verdict-reason" }, line))));
  }

  function showNotice(title, icon, summary, reason) {
    show(banner("neutral", title, icon, summary, reason), []);
  }

  function worstRecord(result) {
    return (result.records || []).find((r) => r && r.verdict === result.verdict) || null;
  }

  function verdictSummary(result) {
    const n = (result.records || []).length;
    const r = worstRecord(result);
    switch (result.verdict) {
      case "valid":
        return n > 1 ? `All ${n} records are genuine, from accredited issuers, and not revoked.`
          : "Genuine: issued by an accredited issuer, and not revoked.";
      case "revoked": {
        const rev = (r && r.revoked) || {};
        return `The issuer revoked this record at block ${rev.height}. Reason given: ${quoted(rev.reason)}. ` +
          "Do not rely on it.";
      }
      case "expired":
        return `The record expired on ${when(r && r.expires)}.`;
      case "unaccredited":
        return "The record is on the ledger as written, but its issuer is not accredited for this kind of " +
          "record. Treat it as an unverified claim.";
      case "self-asserted":
        return "The holder wrote this record about themselves. It is on the ledger as written, but no " +
          "accredited issuer vouches for it.";
      case "wrong-network":
        if (result.chain_id && result.chain_id === network.chainId) {
          return `This proof was made for another network that is also called ${quoted(result.chain_id)}: its ` +
            "genesis file is not the one this node checks against. Do not rely on it here.";
        }
        return `This proof was made for ${networkName(result.chain_id)}, not for ${networkName(network.chainId)}, ` +
          "which this node checks against. Check it against the genesis file of the network it was made for.";
      case "tampered":
        return "This file was changed after it was made, is damaged, or is not a genuine proof. Do not rely on " +
          "anything in it.";
      default:
        return "The node gave a verdict this page does not know; see the checks below.";
    }
  }

  const verdictInfo = (verdict) => VERDICTS[verdict] || { title: String(verdict).toUpperCase(), icon: "?" };

  /** "As of block N, <time>." under a verdict, for a result that names its block. */
  function addMoment(top, result) {
    const asOf = result.as_of || {};
    if (asOf.height === null || asOf.height === undefined) return top;
    top.querySelector(".verdict-body").append(
      el("p", { class: "verdict-as-of" }, `As of block ${asOf.height}, ${when(asOf.time)}.`));
    return top;
  }

  /** What a bundle's verification result shows below its verdict: the file, each record, the moment, the checks. */
  function bundleDetails(result, fileName) {
    const records = Array.isArray(result.records) ? result.records : [];
    const details = [];
    details.push(el("p", { class: "note" }, `File: ${fileName}. Checked by this node against the genesis file of `,
      networkName(network.chainId || (result.verdict !== "wrong-network" ? result.chain_id : null)), "."));
    records.forEach((r, i) => details.push(recordSection(r, i, records.length, result)));
    details.push(asOfSection(result));
    details.push(checksSection(result, records.length));
    return details;
  }

  function showResult(result, fileName) {
    const info = verdictInfo(result.verdict);
    const tone = VERDICTS[result.verdict] ? result.verdict : "neutral";
    const records = Array.isArray(result.records) ? result.records : [];
    const failed = firstFailure(result);
    const extra = [];
    if (result.verdict === "tampered" && failed) extra.push(`What failed: ${failed.detail}`);
    if (records.length > 1) {
      const counts = {};
      for (const r of records) counts[r.verdict] = (counts[r.verdict] || 0) + 1;
      const parts = Object.keys(VERDICTS).filter((v) => counts[v]).map((v) => `${counts[v]} ${VERDICTS[v].title.toLowerCase()}`);
      extra.push(`${records.length} records in this file: ${parts.join(", ")}. Each is shown below.`);
    }
    const top = addMoment(banner(tone, info.title, info.icon, verdictSummary(result), ...extra), result);
    show(top, bundleDetails(result, fileName).filter(Boolean));
  }

  // --- a credential's result -------------------------------------------------------------------------------

  // The parts of a credential ler/vc.py checks, in the order a person reads them.
  const PART_LABELS = {
    signature: "Signature by the issuer’s key",
    issuer_key: "The key is the issuer’s",
    validity_period: "Validity period",
    ledger_anchor: "Ledger anchor",
  };

  /** A check of the report by its name (ler/vc.py), or null. */
  function reportCheck(report, name) {
    return report.checks.find((c) => c && c.check === name) || null;
  }

  /** The detail of a credential part: why it failed, or what it found. */
  function partDetail(report, part) {
    if (part === "signature") {
      const own = isObject(report.signature) && Array.isArray(report.signature.checks) ? report.signature.checks : [];
      const c = own.find((x) => x && x.pass === false) || own[own.length - 1];
      return c ? String(c.detail) : "";
    }
    if (part === "ledger_anchor") {
      const match = reportCheck(report, "matches ledger");
      return match ? String(match.detail) : "";
    }
    const c = reportCheck(report, part === "issuer_key" ? "issuer key" : "validity period");
    return c ? String(c.detail) : "";
  }

  /** A part's state in plain words, and whether it is good ("ok"), bad ("bad") or unknown ("warn"). */
  function partState(report, part) {
    const state = report.parts[part];
    if (part !== "ledger_anchor") {
      return state === "valid" ? ["ok", "Valid"] : ["bad", "INVALID"];
    }
    switch (state) {
      case "valid":
        return ["ok", "Valid: the ledger proof it carries holds, and the credential says exactly what it proves " +
          "(details below)."];
      case "absent":
        return ["warn", "Not checked: the credential carries no ledger proof, so nothing shows that its record " +
          "is on the ledger, that its issuer is accredited, or that it was not revoked."];
      case "not checked":
        return ["warn", "Not checked: the ledger proof was not checked against a genesis file."];
      case "not anchored":
        return ["bad", "NOT ANCHORED: the credential carries no ledger proof, so nothing shows that its record " +
          "is on this network’s ledger, that its issuer is accredited, or that it was not revoked. Its " +
          "signature alone proves only who signed it."];
      case "mismatch":
        return ["bad", "DOES NOT MATCH: the credential does not say what the ledger proof it carries proves."];
      default: {
        const ledger = report.ledger;
        return ["bad", `${verdictInfo(state).title}: ${ledger ? verdictSummary(ledger) : "the ledger proof does not hold."}`];
      }
    }
  }

  function credentialSection(report) {
    const rows = [];
    if (typeof report.name === "string" && report.name) rows.push(fact("Name", report.name));
    if (typeof report.issuer === "string" && report.issuer) {
      rows.push(fact("Issuer named in it",
        typeof report.issuer_name === "string" && report.issuer_name ? el("p", {}, report.issuer_name) : null,
        el("p", { class: "did" }, report.issuer)));
    }
    for (const part of Object.keys(PART_LABELS)) {
      const [tone, words] = partState(report, part);
      const detail = partDetail(report, part);
      rows.push(fact(PART_LABELS[part], el("p", { class: `status-line status-${tone}`, "data-part": part }, words),
        detail ? el("p", { class: "part-detail" }, detail) : null));
    }
    return el("div", { class: "record credential" },
      el("h3", {}, "Credential"),
      el("p", {}, "This file is a credential (a W3C Verifiable Credential). Its own signature was checked, and " +
        "any ledger proof it carries."),
      el("dl", { class: "facts" }, rows.flat()));
  }

  function showCredential(report, fileName) {
    const ledger = report.ledger;
    const parts = report.parts;
    const failing = Object.keys(PART_LABELS).filter((p) => partState(report, p)[0] === "bad");
    const named = failing.map((p) => {
      const detail = partDetail(report, p);
      return `${PART_LABELS[p]}${detail ? ` (${detail})` : ""}`;
    });
    let top;
    const ledgerVerdictFailed = ledger && parts.ledger_anchor !== "valid" && ledger.verdict !== "valid";
    if (report.valid === true) {
      top = banner("valid", "VALID", VERDICTS.valid.icon, ledger
        ? "Genuine: signed by its issuer, and its ledger proof shows the record was issued by an accredited " +
          "issuer and is not revoked."
        : "Signed by its issuer and within its validity period. It carries no ledger proof: nothing shows " +
          "whether its issuer is accredited or whether it was revoked.");
    } else if (ledgerVerdictFailed) {
      const info = verdictInfo(ledger.verdict);
      top = banner(VERDICTS[ledger.verdict] ? ledger.verdict : "neutral", info.title, info.icon,
        verdictSummary(ledger), named.length ? `What failed: ${named.join("; ")}.` : null);
    } else if (parts.signature !== "valid") {
      top = banner("tampered", "INVALID SIGNATURE", "✗", "The credential’s signature by its issuer does not " +
        "hold: it was changed after it was signed, or its issuer never signed it. Do not rely on anything in it.",
      `What failed: ${named.join("; ")}.`);
    } else {
      top = banner("tampered", "NOT VALID", "✗", "The credential does not hold up. Do not rely on it.",
        `What failed: ${named.length ? named.join("; ") : "see the checks below"}.`);
    }
    const details = [credentialSection(report)];
    if (ledger) {
      addMoment(top, ledger);
      details.push(...bundleDetails(ledger, fileName));
    } else {
      details.push(el("p", { class: "note" }, `File: ${fileName}. Checked by this node.`));
    }
    show(top, details.filter(Boolean));
  }

  function fact(term, ...values) {
    return [el("dt", {}, term), el("dd", {}, ...values)];
  }

  function issuerFacts(r, result, i) {
    const rows = [];
    if (!r.issuer) return rows;
    const self = r.standing === "self-asserted" || (r.holder && r.issuer === r.holder);
    const who = self ? "The holder themselves (self-asserted)"
      : r.issuer_name || "An unregistered issuer (no name on the ledger)";
    rows.push(fact("Issued by", el("p", {}, who), el("p", { class: "did" }, r.issuer)));
    const net = networkName(result.chain_id);
    if (r.standing === "accredited") {
      const scopes = Array.isArray(r.issuer_scopes) && r.issuer_scopes.length
        ? ` for: ${r.issuer_scopes.join(", ")}` : "";
      const lines = [el("p", {}, `Accredited by the authorities of ${net}${scopes}.`),
        el("p", {}, `It was accredited for this kind of record when it issued this one (block ${r.anchored_height}).`)];
      if (r.issuer_status_now && r.issuer_status_now !== "active") {
        lines.push(el("p", { class: "status-warn" }, `Today this issuer’s accreditation is ${r.issuer_status_now}; ` +
          "records it issued before that stay valid."));
      }
      rows.push(fact("Accreditation", ...lines));
    } else if (self) {
      rows.push(fact("Accreditation", el("p", { class: "status-warn" },
        "None: self-asserted. No accredited issuer vouches for this record.")));
    } else if (r.standing) {
      // The verifier's reason (not registered, another record type, or an accreditation that had ended).
      const why = (result.checks || []).find((c) => c && c.check === "issuer accredited" && c.record === i &&
        c.pass === false && typeof c.detail === "string" && c.detail.startsWith("unaccredited: "));
      rows.push(fact("Accreditation", el("p", { class: "status-warn" },
        `None: this issuer is not accredited for ${quoted(r.type)} by the authorities of ${net}.`),
      ...(why ? [el("p", {}, `${why.detail.slice("unaccredited: ".length)}.`)] : [])));
    }
    return rows;
  }

  function claimValue(value) {
    if (typeof value === "string") return value;
    if (value && typeof value === "object" && !Array.isArray(value) &&
        typeof value.sha256 === "string" && typeof value.name === "string") {
      return `file ${quoted(value.name)} (${value.media_type}), fingerprint SHA-256 ${value.sha256}; ask the ` +
        "holder for the file, and check it with “ler verify --evidence”";
    }
    return JSON.stringify(value);
  }

  function recordSection(r, i, n, result) {
    const heading = n > 1 ? `Record ${i + 1} of ${n}` : "What the record says";
    const info = VERDICTS[r.verdict];
    const section = el("div", { class: "record" },
      el("h3", {}, heading, n > 1 && info
        ? el("span", { class: `badge tone-${r.verdict}` }, hidden("verdict: "), info.title) : null));
    const rows = [];
    const proven = r.anchored_height !== null && r.anchored_height !== undefined;
    if (!proven) {
      section.append(el("p", {}, "Nothing in this record can be relied on: its proof does not hold."));
      section.append(el("dl", { class: "facts" }, fact("Record ID", el("span", { class: "did" }, r.record_id))));
      return section;
    }
    if (r.type) rows.push(fact("Kind of record", r.type));
    rows.push(...issuerFacts(r, result, i));
    rows.push(fact("Issued", `${when(r.anchored_time)} (block ${r.anchored_height})`));
    if (r.holder) rows.push(fact("Holder", el("span", { class: "did" }, r.holder)));
    if (r.expires !== null && r.expires !== undefined) rows.push(fact("Valid until", when(r.expires)));

    let status;
    if (r.revoked) {
      status = el("p", { class: "status-line status-bad" },
        `REVOKED by the issuer at block ${r.revoked.height}. Reason: ${quoted(r.revoked.reason)}`);
    } else if (r.verdict === "expired") {
      status = el("p", { class: "status-line status-warn" }, `EXPIRED on ${when(r.expires)}`);
    } else {
      status = el("p", { class: "status-line status-ok" }, `Not revoked, as of block ${result.as_of && result.as_of.height}`);
    }
    rows.push(fact("Status", status));

    const disclosed = r.disclosed && typeof r.disclosed === "object" ? Object.entries(r.disclosed) : [];
    rows.push(fact("Details shown", disclosed.length
      ? el("ul", { class: "claims" }, disclosed.map(([k, v]) =>
        el("li", {}, el("span", { class: "claim-name" }, k), ": ", claimValue(v))))
      : el("p", {}, "None: the holder shows only that the record exists.")));

    const hiddenNames = Array.isArray(r.hidden_claims) ? r.hidden_claims : [];
    let hiddenValue;
    if (hiddenNames.length) {
      hiddenValue = el("ul", { class: "claims" }, hiddenNames.map((k) =>
        el("li", { class: "claim-hidden" }, el("span", { class: "claim-name" }, k), " — hidden by the holder")));
    } else if (r.hidden) {
      hiddenValue = el("p", {}, `${plural(r.hidden, "detail", "details")} hidden by the holder`);
    } else {
      hiddenValue = el("p", {}, "None: the holder shows every detail of the record.");
    }
    rows.push(fact("Details hidden", hiddenValue));

    const endorsements = Array.isArray(r.endorsements) ? r.endorsements : [];
    rows.push(fact("Endorsements", endorsements.length
      ? el("ul", { class: "claims" }, endorsements.map((e) => el("li", {},
        el("p", {}, `A personal endorsement, not an accreditation, made at block ${e.height}` +
          (e.digest ? ` for a statement with SHA-256 ${e.digest}` : "") + ". Endorsed by:"),
        el("p", { class: "did" }, e.endorser))))
      : el("p", {}, "None")));
    rows.push(fact("Record ID", el("span", { class: "did" }, r.record_id)));
    section.append(el("dl", { class: "facts" }, rows.flat()));
    return section;
  }

  function asOfSection(result) {
    const asOf = result.as_of || {};
    if (asOf.height === null || asOf.height === undefined) return null;
    return el("div", { class: "record" },
      el("h3", {}, "The moment this proof speaks for"),
      el("p", { class: "as-of" }, `Block ${asOf.height} of ${networkName(result.chain_id)}, committed on ` +
        `${when(asOf.time)}. Whether the record is revoked is known as of that block; for a later status, ` +
        "ask the holder for a fresh proof."),
      asOf.block ? el("p", { class: "block-hash" }, `Block fingerprint: ${asOf.block}`) : null);
  }

  function checksSection(result, n) {
    const checks = result.checks.filter((c) => c && typeof c === "object");
    return el("div", { class: "record" },
      el("h3", {}, "Every check, in plain words"),
      el("ul", { class: "checks" }, checks.map((c) => {
        const label = CHECK_LABELS[c.check] || String(c.check);
        const where = n > 1 && typeof c.record === "number" ? ` (record ${c.record + 1})` : "";
        return el("li", { class: c.pass ? "check-pass" : "check-fail" },
          el("span", { class: `check-mark ${c.pass ? "pass" : "fail"}` },
            el("span", { "aria-hidden": "true" }, c.pass ? "✓ " : "✗ "), c.pass ? "Passed" : "Failed"),
          el("span", { class: "check-detail" }, el("span", { class: "check-name" }, label + where), `: ${c.detail}`));
      })));
  }

  // --- choosing and dropping ------------------------------------------------------------------------------

  function setUp() {
    const input = document.getElementById("file-input");
    const button = document.getElementById("choose-button");
    const zone = document.getElementById("dropzone");

    button.addEventListener("click", () => input.click());
    input.addEventListener("change", () => {
      const file = input.files && input.files[0];
      if (file) checkFile(file).finally(() => { input.value = ""; });
    });

    const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
    let depth = 0;
    zone.addEventListener("dragenter", (e) => {
      if (!hasFiles(e)) return;
      depth += 1;
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) zone.classList.remove("dragging");
    });
    // A file dropped anywhere on the page is taken, rather than the browser leaving the page to open it.
    document.addEventListener("dragover", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
    });
    document.addEventListener("drop", (e) => {
      if (!e.dataTransfer || !e.dataTransfer.files || !e.dataTransfer.files.length) return;
      e.preventDefault();
      depth = 0;
      zone.classList.remove("dragging");
      checkFile(e.dataTransfer.files[0]);
    });

    loadNetwork();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setUp);
  else setUp();
})();
