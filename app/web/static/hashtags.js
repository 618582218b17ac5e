// Hashtags as the server reads them: the matches of #[a-z0-9]+ in the lowercased body.

const TAG = /#([a-z0-9]+)/g;

export function hashtagsOf(body) {
  return new Set(Array.from(body.toLowerCase().matchAll(TAG), (match) => match[1]));
}

/** "Python", "#python" -> "python"; null when it is not one hashtag. */
export function normalizeHashtag(text) {
  const tag = text.trim().replace(/^#/, "").toLowerCase();
  return /^[a-z0-9]+$/.test(tag) ? tag : null;
}

export function hashtagHref(tag) {
  return `#/tag/${tag}`;
}

/** The body as text nodes and links to hashtag views; never parsed as HTML. */
export function renderBody(body, into) {
  into.replaceChildren();
  const pattern = /#[A-Za-z0-9]+/g;
  let last = 0;
  for (const match of body.matchAll(pattern)) {
    if (match.index > last) into.append(body.slice(last, match.index));
    const link = document.createElement("a");
    const tag = match[0].slice(1).toLowerCase();
    link.href = hashtagHref(tag);
    link.className = "tag";
    link.dataset.tag = tag;
    link.textContent = match[0];
    into.append(link);
    last = match.index + match[0].length;
  }
  if (last < body.length) into.append(body.slice(last));
}
