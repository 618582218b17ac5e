// One list of posts in the DOM, kept in step with the store by pk: a new post slides in,
// an edited one is highlighted, a removed one fades out before it leaves.

import { renderBody } from "./hashtags.js";

const LEAVE_MS = 900; // longer than the fade in app.css: the element goes even without it

function formatTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime())
    ? iso
    : date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export class PostList {
  /** actions: {isMine(post), edit(post, body) -> Promise<string|null>, remove(post) -> Promise<string|null>} */
  constructor(container, actions) {
    this.container = container;
    this.actions = actions;
    this.elements = new Map(); // pk -> <article>
  }

  /** Show exactly these posts, in this order; `live` holds the pks that changed live. */
  show(posts, live = new Set()) {
    const wanted = new Set(posts.map((post) => post.pk));
    for (const [pk, element] of this.elements) {
      if (!wanted.has(pk)) this._leave(pk, element);
    }
    let previous = null;
    for (const post of posts) {
      let element = this.elements.get(post.pk);
      if (!element) {
        element = this._build(post);
        this.elements.set(post.pk, element);
        if (live.has(post.pk)) this._flash(element, "entering");
      } else if (element.dataset.version !== String(post.version)) {
        this._fill(element, post);
        if (live.has(post.pk)) this._flash(element, "edited");
      }
      const next = previous ? previous.nextElementSibling : this.container.firstElementChild;
      if (next !== element) this.container.insertBefore(element, next);
      previous = element;
    }
  }

  /** Forget every element at once (a new view). */
  reset() {
    this.elements.clear();
    this.container.replaceChildren();
  }

  _flash(element, name) {
    element.classList.remove("entering", "edited");
    void element.offsetWidth; // restart the animation when it runs again
    element.classList.add(name);
    element.addEventListener("animationend", () => element.classList.remove(name), { once: true });
  }

  _leave(pk, element) {
    this.elements.delete(pk);
    element.classList.add("leaving");
    element.setAttribute("aria-hidden", "true");
    const remove = () => element.remove();
    element.addEventListener("animationend", remove, { once: true });
    setTimeout(remove, LEAVE_MS);
  }

  _build(post) {
    const element = document.createElement("article");
    element.className = "post";
    element.dataset.pk = String(post.pk);
    const head = document.createElement("header");
    const author = document.createElement("span");
    author.className = "author";
    const time = document.createElement("time");
    const edited = document.createElement("span");
    edited.className = "edited-mark";
    edited.textContent = "edited";
    head.append(author, time, edited);
    const body = document.createElement("p");
    body.className = "body";
    element.append(head, body);
    if (this.actions.isMine(post)) element.append(this._ownActions(element));
    this._fill(element, post);
    return element;
  }

  _fill(element, post) {
    element.post = post;
    element.dataset.version = String(post.version);
    element.querySelector(".author").textContent = this.actions.isMine(post)
      ? "you"
      : `user ${post.author}`;
    const time = element.querySelector("time");
    time.dateTime = post.created_at;
    time.textContent = formatTime(post.created_at);
    element.querySelector(".edited-mark").hidden = post.version <= 1;
    if (!element.classList.contains("editing")) {
      renderBody(post.body, element.querySelector(".body"));
    }
  }

  _ownActions(element) {
    const bar = document.createElement("div");
    bar.className = "post-actions";
    const edit = button("Edit", "edit");
    const remove = button("Delete", "delete");
    bar.append(edit, remove);
    edit.addEventListener("click", () => this._openEditor(element));
    let armed = false;
    remove.addEventListener("click", async () => {
      // Two steps instead of a blocking confirm(): the second click deletes.
      if (!armed) {
        armed = true;
        remove.textContent = "Really delete?";
        remove.classList.add("danger");
        setTimeout(() => {
          armed = false;
          remove.textContent = "Delete";
          remove.classList.remove("danger");
        }, 4000);
        return;
      }
      remove.disabled = true;
      await this.actions.remove(element.post);
      remove.disabled = false;
    });
    return bar;
  }

  _openEditor(element) {
    if (element.classList.contains("editing")) return;
    element.classList.add("editing");
    const body = element.querySelector(".body");
    const form = document.createElement("form");
    form.className = "editor";
    const field = document.createElement("textarea");
    field.name = "body";
    field.rows = 3;
    field.value = element.post.body;
    field.setAttribute("aria-label", "Edit the post");
    const problem = document.createElement("p");
    problem.className = "form-error";
    problem.setAttribute("role", "alert");
    const save = button("Save", "save");
    save.type = "submit";
    const cancel = button("Cancel", "cancel");
    form.append(field, problem, save, cancel);
    body.hidden = true;
    body.after(form);
    field.focus();
    const close = () => {
      form.remove();
      body.hidden = false;
      element.classList.remove("editing");
      renderBody(element.post.body, body);
    };
    cancel.addEventListener("click", close);
    form.addEventListener("submit", async (submit) => {
      submit.preventDefault();
      save.disabled = true;
      const error = await this.actions.edit(element.post, field.value);
      save.disabled = false;
      if (error) problem.textContent = error;
      else close();
    });
  }
}

function button(label, name) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = label;
  element.className = name;
  return element;
}
