// The posts this page holds, by pk, with the version rule: an event or a listing never
// replaces a post with one that is not newer, and a deleted post never comes back.

export class PostStore {
  constructor() {
    this.posts = new Map();
    this.versions = new Map(); // pk -> highest version seen; Infinity once deleted
  }

  /** Take post if it is newer than what is held; true when it changed something. */
  accept(post) {
    const held = this.versions.get(post.pk) ?? 0;
    if (!(post.version > held)) return false;
    this.posts.set(post.pk, post);
    this.versions.set(post.pk, post.version);
    return true;
  }

  has(pk) {
    return this.posts.has(pk);
  }

  /** The post is deleted: remember that, so a late create or update cannot revive it. */
  forget(pk) {
    this.posts.delete(pk);
    this.versions.set(pk, Infinity);
  }

  /** Stop holding pk without knowing its fate (a later listing may bring it back). */
  drop(pk) {
    this.posts.delete(pk);
    this.versions.delete(pk);
  }

  /** Before a full reload: hold nothing but the deletions. */
  clear() {
    this.posts.clear();
    for (const [pk, version] of this.versions) {
      if (version !== Infinity) this.versions.delete(pk);
    }
  }

  /** Newest first, optionally only those for which keep(post) holds. */
  newest(keep = () => true) {
    return [...this.posts.values()].filter(keep).sort((a, b) => b.pk - a.pk);
  }
}
