// Run from the repository root: npm run db:generate
// The URL is only used by drizzle-kit's push/studio commands; generate needs no database.
import { defineConfig } from 'drizzle-kit'

export default defineConfig({
  dialect: 'postgresql',
  schema: './drizzle/schema.ts',
  out: './migrations',
  dbCredentials: { url: 'postgres://postgres@127.0.0.1:5432/postgres' }
})
